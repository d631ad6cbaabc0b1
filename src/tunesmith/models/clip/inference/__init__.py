"""CLIP's image transform for inference and export (torchtune's ``models.clip.inference``)."""

from tunesmith.models.clip.inference._transform import CLIPImageTransform

__all__ = ["CLIPImageTransform"]

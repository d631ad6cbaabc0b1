"""Model builders for this family (filled by the models work)."""

__all__: list[str] = []

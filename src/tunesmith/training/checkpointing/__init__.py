"""tunesmith.training.checkpointing"""
__all__: list[str] = []

"""tunesmith.recipes"""

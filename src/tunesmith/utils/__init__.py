"""tunesmith.utils"""

"""tunesmith.modules"""

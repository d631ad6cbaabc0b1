"""tunesmith.data"""

"""tunesmith.datasets"""

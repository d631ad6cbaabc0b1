"""tunesmith.modules.peft"""

"""Generated from proto/ by tools/gen_protos.py (make gen). Do not edit."""

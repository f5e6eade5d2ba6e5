"""Serving: the engines that run an expert's model behind one seam (engine.py)."""

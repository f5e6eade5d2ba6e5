"""The client side of an expert: asking a (possibly remote) expert over ``/mosaic/infer/1``,
holding a session with it, and spot-checking its claimed scores.  Above ``serve``."""

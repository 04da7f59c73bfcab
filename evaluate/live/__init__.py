"""Recognition at deployment: model runtimes, whole-clip recognition and the live loop.

``evaluate.infer`` is their command line. Submodules import only what they use (MediaPipe,
OpenCV and PyTorch are loaded on first use), so a live session starts without paying for the
offline path.
"""

"""Media steps of the cpu stages: ffmpeg runner, audio and image preparation, encoding.

Each submodule is imported on its own (``pipeline.media.audio`` ...); this package
imports nothing eagerly, so importing one step never drags in OpenCV or the others.
"""

from tests.pipeline.media.helpers import media_dir, portrait_crop, speech_16k, speech_wav

__all__ = ["media_dir", "portrait_crop", "speech_16k", "speech_wav"]

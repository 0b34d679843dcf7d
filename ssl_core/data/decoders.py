"""The decode backend named by `data.decoder`: "pyav" (ssl_core/data/decode.py, the default) or the optional
"torchcodec" (ssl_core/data/decode_torchcodec.py); both expose decode_clip and decode_eval_clips.

Try it:
    python -c "from ssl_core.data.decoders import get_decoder, torchcodec_unavailable; \
print(get_decoder('pyav').__name__, torchcodec_unavailable())"
"""

from __future__ import annotations

from types import ModuleType

from ssl_core.data import decode

DECODERS = ("pyav", "torchcodec")
class DecoderUnavailable(RuntimeError):
    """The configured decode backend cannot be used here (not a DecodeError: no video should be skipped for it)."""


TORCHCODEC_HINT = (
    "data.decoder: torchcodec or its FFmpeg libraries are missing; pip install 'vidssl[torchcodec]' and the "
    "system FFmpeg libraries (apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libavfilter8 "
    "libswresample4 libavdevice59)"
)


def torchcodec_unavailable() -> str | None:
    """None when the torchcodec backend can be used here, else why not (the install hint and the cause)."""
    try:
        # here: torchcodec is optional (vidssl[torchcodec]): its ImportError is the answer, not a failure
        import ssl_core.data.decode_torchcodec as backend

        # torchcodec 0.17 imports without FFmpeg and fails at the first VideoDecoder instead: load its FFmpeg
        # libraries now, so a missing FFmpeg is found here, not as every video skipped.
        backend.load_ffmpeg()
    except (ImportError, OSError, RuntimeError) as e:  # torchcodec raises RuntimeError when FFmpeg libs fail
        return f"{TORCHCODEC_HINT} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def get_decoder(name: str) -> ModuleType:
    """The backend module for `data.decoder`: both expose decode_clip and decode_eval_clips with the same
    arguments and outputs (uint8 (T, S, S, 3) / (N, T, H, W, 3)) and raise DecodeError / DecodeTimeout."""
    if name == "pyav":
        return decode
    if name == "torchcodec":
        reason = torchcodec_unavailable()
        if reason is not None:
            raise DecoderUnavailable(reason)
        # here: torchcodec is optional (vidssl[torchcodec]); torchcodec_unavailable just found it usable
        import ssl_core.data.decode_torchcodec as backend

        return backend
    raise ValueError(f"unknown decoder {name!r}; choose from {DECODERS}")

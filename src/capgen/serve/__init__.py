"""The HTTP server over a Captioner: a web page, /caption, /health (FastAPI + uvicorn).

from capgen import Captioner
from capgen.serve import ServeSettings, create_app
app = create_app(Captioner.from_pretrained("best.pt"), ServeSettings(max_upload_mb=10))
"""

from capgen.serve.app import create_app
from capgen.serve.limits import ServeSettings

__all__ = ["ServeSettings", "create_app"]

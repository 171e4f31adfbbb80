"""Entry point: `gunicorn -c gunicorn.conf.py app_isnet_tiny:app`, or `python app_isnet_tiny.py` for the dev server."""
from __future__ import annotations

import sys

from app import create_app
from app.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")

if __name__ == "__main__":
    config = app.config["PIXPORT"]
    app.run(host="0.0.0.0", port=config.port, debug=config.flask_env == "development", threaded=True)

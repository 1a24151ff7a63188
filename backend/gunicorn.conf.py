"""gunicorn's settings for this app: gunicorn reads ./gunicorn.conf.py from its
working directory (backend/), so every gunicorn command started here uses them."""

from app.core.config import settings

# Only the reverse proxy may set X-Forwarded-For/-Proto (the client address
# behind the rate limits and the sessions list): gunicorn's own default trusts
# 127.0.0.1. Flags on the command line still win.
forwarded_allow_ips = settings.FORWARDED_ALLOW_IPS

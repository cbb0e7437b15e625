"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""
from service import wsgi_app

app = wsgi_app()

"""One module per route group, each an `APIRouter`; `serve.app.create_app` includes them."""

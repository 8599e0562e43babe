"""``simsearch serve``: the collections and models kept warm behind HTTP (FastAPI), with a web page at ``/``.

    from simsearch.service import create_app
    app = create_app(home=Path("indexes"))          # every collection under home, loaded on first use
    uvicorn.run(app, host="127.0.0.1", port=8000)

Each answer has the shape the command line's ``--json`` prints; each error is ``{"error", "remedy"}`` with the
status of the library error it comes from (``SimsearchError.http_status``).
"""

from simsearch.service.app import Service, create_app

__all__ = ["Service", "create_app"]

"""The nurses' side: HTTP API, live board, operator metrics (``icuwatch serve``)."""

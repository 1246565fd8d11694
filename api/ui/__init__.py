"""The built-in chat page at /ui: page.py serves the files in static/ (HTML, CSS, JS; no build
step) and decides when a browser gets the page. It imports falcon and the standard library
only; app.py and the extras' routes use it."""

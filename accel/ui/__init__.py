"""The Gradio app's parts (``app.py`` wires them): the page script, shared adapters, the handlers and the tabs."""

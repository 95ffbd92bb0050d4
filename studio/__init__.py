"""The Gradio studio: layout, events and the background job runner (all work is done by `engine`)."""

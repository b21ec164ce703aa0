"""rechat: a markdown-first record/replay proxy for OpenAI-compatible APIs.

The package is layered; dependencies point one way:
cli -> app -> reload/console -> proxy -> upstream/store -> sessionfile/matching/policy/sse/completion
-> fingerprint -> exchange -> errors. The core never imports the CLI (typer) or rich.
"""

__version__ = "0.2.0"

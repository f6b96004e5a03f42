"""Ollama: a Go program no package registry this project reaches ships, so not installable here;
its rules were read from its source (convert/convert_gemma3n.go, model/models/gemma3n), never
measured. It loads GGUF files, made by llama.cpp's converter, with one FFN width."""

from matlab.formats import FORMATS
from matlab.runtimes.base import ANOTHER_MODEL, REFUSES, Layout, Rule, Runtime, producers_last, uniform_width

RUNTIME = Runtime(
    name="ollama", package="ollama", measured_version=None, measured=False,
    layout=Layout("GGUF, scalar intermediate_size", scalar_width=True), formats=FORMATS,
    rules=(Rule("uniform-width", uniform_width, REFUSES, "read: convert/convert_gemma3n.go (IntermediateSize "
                "uint32; ollama issue 11615)"),
           Rule("kv-sources", producers_last, ANOTHER_MODEL, "read: model/models/gemma3n/model_text.go")),
    unavailable="Ollama is not installable here: a Go program that no registry this project reaches ships "
                "(docs/runtimes.md); llama.cpp's conformance covers the GGUF path it loads",
)

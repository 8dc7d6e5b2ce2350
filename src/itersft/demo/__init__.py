"""The built-in demo: offline toy models and tokenizer (`toy`), the addition task (`addition`) and the
protocol `itersft demo` runs (`protocol`)."""

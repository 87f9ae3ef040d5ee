"""Front ends: the command line, the web page and batch generation."""

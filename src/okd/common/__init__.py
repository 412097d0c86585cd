"""Small helpers every layer may use (they import nothing from okd but ``okd.errors``)."""

"""The built-in tiny video model: its vocabulary, data generator, text encoder, training and evaluation."""

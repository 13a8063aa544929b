EncoderRunner = make_runner = None

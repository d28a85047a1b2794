"""capgen's converter: turns tutorial Keras files into a runnable model folder.

Runs once on a build machine and may import TensorFlow; install it with
`pip install 'capgen[convert]'` (and tf-keras with --no-deps, see the Makefile).
"""

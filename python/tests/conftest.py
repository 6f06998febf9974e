import os
import sys

# helpers.py sits beside the tests; pytest's rootdir-relative import needs it on the path.
sys.path.insert(0, os.path.dirname(__file__))

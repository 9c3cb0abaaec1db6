"""`python3 -m slmforge.guard`: build the prompt-injection detector (see slmforge.guard.detector.main)."""

from slmforge.guard.detector import main

main()

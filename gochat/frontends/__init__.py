"""What a person or a script meets: the terminal UI, line mode (JSON events), and the
demo that runs a bootnode, an echo bot and the UI in one process."""

"""What CI does around the pyinfra run: phases, exit codes, outside health, output, notices."""

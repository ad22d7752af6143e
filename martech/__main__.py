from martech.cli import main

main()

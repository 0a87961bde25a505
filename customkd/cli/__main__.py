from customkd.cli.app import main

main()

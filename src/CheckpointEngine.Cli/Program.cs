// The ckpt-engine executable: a thin shell over the library's command-line host.
return CheckpointEngine.Cli.Commands.CkptEngineCli.Run(args, Console.Out, Console.Error);

using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using CheckpointEngine.Hosting;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace CheckpointEngine.Cli.Progress;

/// <summary>
/// How <c>launch -- update</c> and <c>demo</c> show their ranks: the writers to hand <see cref="Hosting.Launch.Launcher"/>
/// (<see cref="Out"/>, <see cref="Err"/>) take the ranks' progress lines off the output and show them as one view: on a
/// console, a live table (per rank: stage, bucket k/n, bytes, GB/s, ETA) with the ranks' logs hidden unless verbose; in
/// logs and pipes, every rank line as before and one progress line per second at most. Disposing ends the view and
/// prints a summary table of the updates' result lines.
/// </summary>
internal sealed class LaunchView : IAsyncDisposable
{
    private static readonly TimeSpan LogInterval = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan LiveInterval = TimeSpan.FromMilliseconds(150);

    private readonly RankBoard _board;
    private readonly TextWriter _stdout;
    private readonly TextWriter _stderr;
    private readonly TextWriter? _capture;
    private readonly bool _verbose;
    private readonly IAnsiConsole? _console;
    private readonly ConcurrentQueue<string> _pending = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _lock = new();
    private readonly Task _renderer;
    private readonly TimeProvider _time;
    private int _printed;
    private int _disposed;

    /// <param name="interactive">A console that takes the live view; false writes lines (see <see cref="IsInteractive"/>).</param>
    /// <param name="capture">Receives every line the ranks print to stdout, progress lines included (a caller that parses them).</param>
    /// <param name="time">Paces the log lines (tests tick it by hand).</param>
    public LaunchView(int ranks, TextWriter stdout, TextWriter stderr, bool interactive, bool verbose, TextWriter? capture = null, TimeProvider? time = null)
    {
        _time = time ?? TimeProvider.System;
        _board = new RankBoard(ranks);
        (_stdout, _stderr, _capture, _verbose) = (stdout, stderr, capture, verbose);
        Out = new LineWriter(OnOut);
        Err = new LineWriter(OnErr);
        if (interactive)
        {
            _console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stdout) });
            _renderer = Task.Run(LiveAsync);
        }
        else
        {
            _renderer = Task.Run(LogAsync);
        }
    }

    /// <summary>Whether <paramref name="stdout"/> is this process's console on a terminal.</summary>
    public static bool IsInteractive(TextWriter stdout) => ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected;

    /// <summary>The environment the ranks need to print progress lines for the view.</summary>
    public static KeyValuePair<string, string?> RankVariable => new(ProgressLine.Variable, "lines");

    public TextWriter Out { get; }

    public TextWriter Err { get; }

    public RankBoard Board => _board;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await _stop.CancelAsync().ConfigureAwait(false);
        await _renderer.ConfigureAwait(false);
        if (_console is null)
        {
            Tick();
        }
        if (_board.Results.Count > 0)
        {
            var table = Summary(_board.Results, ascii: _console is null);
            if (_console is not null)
            {
                _console.Write(table);
            }
            else
            {
                lock (_lock)
                {
                    // Wide enough that a log never wraps a row; no colours or cursor moves in a file.
                    Plain(_stdout).Write(table);
                    _stdout.Flush();
                }
            }
        }
        _stop.Dispose();
    }

    /// <summary>A console for logs and pipes: no colours, no cursor moves, and wide enough that a row never wraps.</summary>
    internal static IAnsiConsole Plain(TextWriter writer)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Interactive = InteractionSupport.No, Out = new AnsiConsoleOutput(writer),
        });
        console.Profile.Width = 160;
        return console;
    }

    /// <summary>The updates' result lines as one table: per method, update and rank, bytes, time, rate and stage sums.</summary>
    internal static Table Summary(IReadOnlyList<Bench.ResultLine> results, bool ascii)
    {
        var table = new Table { Border = ascii ? TableBorder.Ascii : TableBorder.Rounded, Title = new TableTitle("summary") };
        table.AddColumns("method", "#", "rank", "bytes", "s", "GB/s", "h2d s", "bcast s", "reload s", "eff");
        foreach (var column in table.Columns.Skip(1))
        {
            column.RightAligned();
        }
        if (!ascii)
        {
            // Narrow enough for an 80-column terminal.
            table.Border = TableBorder.Minimal;
            foreach (var column in table.Columns)
            {
                column.Padding(1, 0, 0, 0);
            }
        }
        static string F(double v, string format) => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);
        foreach (var r in results.OrderBy(r => r.Method, StringComparer.Ordinal).ThenBy(r => r.Update).ThenBy(r => r.Rank))
        {
            table.AddRow(r.Method, F(r.Update, "0"), F(r.Rank, "0"), ByteSize.Format(r.Bytes), F(r.Seconds, "F3"), F(r.Bytes / Math.Max(r.Seconds, 1e-9) / 1e9, "F2"),
                F(r.Stage, "F3"), F(r.Broadcast, "F3"), F(r.Reload, "F3"), F(r.Efficiency, "F2"));
        }
        return table;
    }

    private void OnOut(string line)
    {
        _capture?.WriteLine(line);
        if (_board.Apply(line))
        {
            return;
        }
        if (_console is null)
        {
            Write(_stdout, line);
        }
        else if (_verbose || Notable(line))
        {
            _pending.Enqueue(line);
        }
    }

    private void OnErr(string line)
    {
        if (_console is null)
        {
            Write(_stderr, line);
        }
        else
        {
            _pending.Enqueue(line);
        }
    }

    /// <summary>Lines a console shows even without --verbose: where files were written.</summary>
    private static bool Notable(string line) =>
        RankBoard.TrySplit(line, out _, out var text) && (text.StartsWith("wrote ", StringComparison.Ordinal) || text.StartsWith("saved ", StringComparison.Ordinal));

    private void Write(TextWriter writer, string line)
    {
        lock (_lock)
        {
            writer.WriteLine(line);
            writer.Flush();
        }
    }

    /// <summary>Logs: the board as one line, each second it moved.</summary>
    private async Task LogAsync()
    {
        using var timer = new PeriodicTimer(LogInterval, _time);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                Tick();
            }
        }
        catch (OperationCanceledException)
        {
            // Disposed: the last line is printed there.
        }
    }

    /// <summary>Logs: writes the board as one line when it moved since the last (the timer calls it each second).</summary>
    internal void Tick()
    {
        var version = _board.Version;
        if (version == 0 || version == Volatile.Read(ref _printed))
        {
            return;
        }
        Volatile.Write(ref _printed, version);
        Write(_stdout, _board.Line());
    }

    /// <summary>A console: a live table redrawn a few times a second, with the lines to show printed above it (all from this one task).</summary>
    private async Task LiveAsync()
    {
        await _console!.Live(LiveTable()).AutoClear(true).StartAsync(async ctx =>
        {
            while (!_stop.IsCancellationRequested)
            {
                Drain();
                ctx.UpdateTarget(LiveTable());
                ctx.Refresh();
                try
                {
                    await Task.Delay(LiveInterval, _stop.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
            Drain();
        }).ConfigureAwait(false);
        // The last state stays on the screen above the summary.
        _console!.Write(LiveTable());
    }

    private void Drain()
    {
        while (_pending.TryDequeue(out var line))
        {
            _console!.Write(new Text(line + "\n"));
        }
    }

    private Table LiveTable()
    {
        var table = new Table { Border = TableBorder.Rounded };
        table.AddColumns("rank", "stage", "bucket", "bytes", "GB/s", "ETA");
        foreach (var column in table.Columns.Skip(2))
        {
            column.RightAligned();
        }
        var ranks = _board.Ranks;
        for (var r = 0; r < ranks.Count; r++)
        {
            var p = ranks[r];
            table.AddRow(new IRenderable[]
            {
                new Text(r.ToString(CultureInfo.InvariantCulture)), new Text(p?.Stage ?? "starting"), new Text(p is null ? "" : RankBoard.Buckets(p)),
                new Text(p is null ? "" : RankBoard.Bytes(p)), new Text(p is null ? "" : RankBoard.Rate(p)), new Text(p is null ? "" : RankBoard.Eta(p)),
            });
        }
        return table;
    }

    /// <summary>Hands each whole line the launcher writes to a callback.</summary>
    private sealed class LineWriter(Action<string> line) : TextWriter
    {
        private readonly StringBuilder _partial = new();

        public override Encoding Encoding => Encoding.UTF8;

        public override void WriteLine(string? value)
        {
            lock (_partial)
            {
                var text = _partial.Append(value).ToString();
                _partial.Clear();
                line(text);
            }
        }

        public override void Write(char value)
        {
            lock (_partial)
            {
                if (value == '\n')
                {
                    var text = _partial.ToString().TrimEnd('\r');
                    _partial.Clear();
                    line(text);
                }
                else
                {
                    _partial.Append(value);
                }
            }
        }
    }
}

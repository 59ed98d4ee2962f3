using System.Globalization;
using System.Text;

namespace CheckpointEngine.Cli.Bench;

/// <summary>
/// The writer a background <see cref="Hosting.Launch.Launcher"/> run prints to: it keeps the last lines (for an
/// error message) and completes <see cref="ReadyAsync"/> when every rank has printed its ready line, so a caller
/// learns the addresses the ranks bound without the output of a long run piling up.
/// </summary>
internal sealed class LaunchLines(string ready, int ranks) : TextWriter
{
    private const int Kept = 40;

    private readonly Lock _lock = new();
    private readonly Queue<string> _tail = new();
    private readonly string?[] _ready = new string?[ranks];
    private readonly TaskCompletionSource<IReadOnlyList<string>> _all = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public override Encoding Encoding => Encoding.UTF8;

    /// <summary>The rest of each rank's first line that starts with the ready text, by rank, once every rank has printed one.</summary>
    public Task<IReadOnlyList<string>> ReadyAsync => _all.Task;

    public string Tail
    {
        get
        {
            lock (_lock)
            {
                return string.Join("\n  ", _tail);
            }
        }
    }

    public override void WriteLine(string? value)
    {
        var line = value ?? "";
        lock (_lock)
        {
            _tail.Enqueue(line);
            while (_tail.Count > Kept)
            {
                _tail.Dequeue();
            }
            // The launcher writes "[rank R] LINE".
            const string prefix = "[rank ";
            var close = line.IndexOf("] ", StringComparison.Ordinal);
            if (line.StartsWith(prefix, StringComparison.Ordinal) && close > prefix.Length
                && int.TryParse(line.AsSpan(prefix.Length, close - prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var rank)
                && rank < _ready.Length && _ready[rank] is null && line.AsSpan(close + 2).StartsWith(ready, StringComparison.Ordinal))
            {
                _ready[rank] = line[(close + 2 + ready.Length)..].Trim();
                if (_ready.All(r => r is not null))
                {
                    _all.TrySetResult([.. _ready!]);
                }
            }
        }
    }

    public override void Write(char value)
    {
        // The launcher writes whole lines only.
    }
}

using Microsoft.Extensions.Logging;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>What a listener logs (a logger that keeps each message as a line); tests wait for a line instead of sleeping.</summary>
internal sealed class LogLines : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) => Add(formatter(state, exception));

    private readonly Lock _lock = new();
    private readonly List<string> _lines = [];
    private TaskCompletionSource _added = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Add(string line)
    {
        TaskCompletionSource added;
        lock (_lock)
        {
            _lines.Add(line);
            (added, _added) = (_added, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        }
        added.TrySetResult();
    }

    public IReadOnlyList<string> Lines
    {
        get
        {
            lock (_lock)
            {
                return [.. _lines];
            }
        }
    }

    /// <summary>The first line containing every fragment, once logged; fails the test when none is within <paramref name="deadline"/>.</summary>
    public async Task<string> WaitForAsync(TimeSpan deadline, params string[] fragments)
    {
        var until = DateTime.UtcNow + deadline;
        while (true)
        {
            Task added;
            lock (_lock)
            {
                if (_lines.FirstOrDefault(l => fragments.All(f => l.Contains(f, StringComparison.Ordinal))) is { } line)
                {
                    return line;
                }
                added = _added.Task;
            }
            var left = until - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || await Task.WhenAny(added, Task.Delay(left, TestContext.Current.CancellationToken)) != added)
            {
                Assert.Fail($"nothing logged with '{string.Join("', '", fragments)}' within {deadline.TotalSeconds:F0} s; logged: {string.Join(" | ", Lines)}");
            }
        }
    }
}

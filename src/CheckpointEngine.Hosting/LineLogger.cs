using Microsoft.Extensions.Logging;

namespace CheckpointEngine.Hosting;

/// <summary>
/// An <see cref="ILogger"/> that writes each message as one plain line (and a failure's exception after it) to a
/// writer: what <c>serve</c> prints on standard output. Requests log concurrently, so lines never interleave.
/// </summary>
internal sealed class LineLogger(TextWriter writer, LogLevel minimum = LogLevel.Information) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel))
        {
            KestrelApps.Log(writer, exception is null ? formatter(state, null) : $"{formatter(state, exception)}: {exception}");
        }
    }
}

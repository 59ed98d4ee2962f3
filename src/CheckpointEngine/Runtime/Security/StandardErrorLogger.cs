using Microsoft.Extensions.Logging;

namespace CheckpointEngine.Runtime.Security;

/// <summary>
/// The logger a listener has until its host gives it one: warnings and worse, one line each on standard
/// error (<c>ckpt-engine: ...</c>), so a refused connection is never silent. The library carries no logging backend.
/// </summary>
internal sealed class StandardErrorLogger : ILogger
{
    public static readonly StandardErrorLogger Instance = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel))
        {
            Console.Error.WriteLine($"ckpt-engine: {formatter(state, exception)}");
        }
    }
}

using Microsoft.AspNetCore.Builder;

namespace CheckpointEngine.Hosting;

/// <summary>What the two HTTP servers (the API, the reference worker) share: a line log safe across request threads, and a bounded stop.</summary>
internal static class KestrelApps
{
    /// <summary>Writes and flushes one line; requests run concurrently, so lines must not interleave.</summary>
    public static void Log(TextWriter? log, string line)
    {
        if (log is null)
        {
            return;
        }
        lock (log)
        {
            log.WriteLine(line);
            log.Flush();
        }
    }

    /// <summary>Lets requests finish within <paramref name="wait"/>, then disposes the app (cutting off whatever still runs).</summary>
    public static async Task StopAsync(WebApplication app, TimeSpan wait)
    {
        using (var deadline = new CancellationTokenSource(wait))
        {
            try
            {
                await app.StopAsync(deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Requests still running past the deadline are cut off by disposal below.
            }
        }
        await app.DisposeAsync().ConfigureAwait(false);
    }
}

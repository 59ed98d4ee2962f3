namespace CheckpointEngine.Tests.Support;

/// <summary>
/// What some tests need from the machine (torch for /usr/bin/python3, a C compiler). Tests do not
/// install packages: <c>.ci/run</c> does, before <c>dotnet test</c>; a missing one fails the test with
/// what to install.
/// </summary>
internal static class DebianPackages
{
    /// <param name="present">Whether what is needed works now, and what it says (a version, or why not).</param>
    /// <returns>What <paramref name="present"/> says when it works.</returns>
    public static async Task<string> EnsureAsync(Func<Task<(bool Ok, string Output)>> present, string purpose, params string[] packages)
    {
        var (ok, output) = await present();
        var names = string.Join(' ', packages);
        return ok ? output : throw new InvalidOperationException(
            $"{purpose} ({output}); install {names} (apt-get install -y --no-install-recommends {names}; .ci/run does it)");
    }
}

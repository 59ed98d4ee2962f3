using System.Diagnostics;
using CheckpointEngine.Runtime.Rendezvous;

namespace CheckpointEngine.Tests.Runtime;

/// <summary>The rendezvous store's operations, server and clients in this process on loopback.</summary>
public class StoreOperationTests
{
    private static readonly TimeSpan Deadline = StoreHarness.StepDeadline;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static void AssertCas(bool swapped, byte[]? current, (bool Swapped, byte[]? Current) actual)
    {
        Assert.Equal(swapped, actual.Swapped);
        Assert.Equal(current, actual.Current);
    }

    [Fact]
    public async Task SetGet_RoundTripsAndOverwrites_MissingIsNull()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        Assert.Null(await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        await c.SetAsync("k", [1, 2, 3], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([1, 2, 3], await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        await c.SetAsync("k", [], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(Array.Empty<byte>(), await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        // Another client sees the same data.
        var other = await h.ConnectAsync();
        Assert.Equal(Array.Empty<byte>(), await other.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await other.GetAsync("K", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Add_FromAbsentAndNegative_CountsFromZero()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        Assert.Equal(5, await c.AddAsync("n", 5, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(-2, await c.AddAsync("n", -7, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(-2, await c.AddAsync("n", 0, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(-1, await c.AddAsync("m", -1, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(8, (await c.GetAsync("n", Ct).WaitAsync(Deadline, Ct))!.Length);
    }

    [Fact]
    public async Task Add_ConcurrentClients_SumCorrectly()
    {
        using var h = StoreHarness.Start();
        var clients = await Task.WhenAll(Enumerable.Range(0, 4).Select(r => h.ConnectAsync(r)));
        await Task.WhenAll(clients.Select(async (c, i) =>
        {
            for (var k = 0; k < 25; k++)
            {
                await c.AddAsync("sum", i + 1, Ct);
            }
        })).WaitAsync(Deadline, Ct);
        Assert.Equal(25 * (1 + 2 + 3 + 4), await clients[0].AddAsync("sum", 0, Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Add_OnNonCounterKey_ThrowsNamingKey()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        await c.SetAsync("text", "abc"u8.ToArray(), Ct).WaitAsync(Deadline, Ct);
        var e = await Assert.ThrowsAsync<RendezvousException>(() => c.AddAsync("text", 1, Ct).WaitAsync(Deadline, Ct));
        Assert.Contains("'text'", e.Message, StringComparison.Ordinal);
        Assert.Contains("not a counter", e.Message, StringComparison.Ordinal);
        // An error reply leaves the connection usable and the value untouched.
        Assert.Equal("abc"u8.ToArray(), await c.GetAsync("text", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task CompareAndSet_AbsentMismatchMatch_SwapsOnlyOnMatch()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        AssertCas(true, new byte[] { 1 }, await c.CompareAndSetAsync("k", null, [1], Ct).WaitAsync(Deadline, Ct));
        AssertCas(false, new byte[] { 1 }, await c.CompareAndSetAsync("k", null, [2], Ct).WaitAsync(Deadline, Ct));
        AssertCas(false, new byte[] { 1 }, await c.CompareAndSetAsync("k", [9], [2], Ct).WaitAsync(Deadline, Ct));
        AssertCas(false, new byte[] { 1 }, await c.CompareAndSetAsync("k", [], [2], Ct).WaitAsync(Deadline, Ct));
        AssertCas(true, new byte[] { 2, 2 }, await c.CompareAndSetAsync("k", [1], [2, 2], Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([2, 2], await c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        AssertCas(false, (byte[]?)null, await c.CompareAndSetAsync("absent", [1], [2], Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await c.GetAsync("absent", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task CompareAndSet_ConcurrentClaims_ExactlyOneWins()
    {
        using var h = StoreHarness.Start();
        var clients = await Task.WhenAll(Enumerable.Range(0, 6).Select(r => h.ConnectAsync(r)));
        var results = await Task.WhenAll(clients.Select((c, i) => c.CompareAndSetAsync("leader", null, [(byte)i], Ct))).WaitAsync(Deadline, Ct);
        var winner = Assert.Single(results, r => r.Swapped);
        Assert.All(results, r => Assert.Equal(winner.Current, r.Current));
    }

    [Fact]
    public async Task DeleteAndDeletePrefix_ReturnWhatWasRemoved()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        foreach (var k in new[] { "p/1", "p/2", "p/x/3", "q/1", "p" })
        {
            await c.SetAsync(k, [1], Ct).WaitAsync(Deadline, Ct);
        }
        Assert.True(await c.DeleteAsync("q/1", Ct).WaitAsync(Deadline, Ct));
        Assert.False(await c.DeleteAsync("q/1", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(3, await c.DeletePrefixAsync("p/", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(0, await c.DeletePrefixAsync("p/", Ct).WaitAsync(Deadline, Ct));
        Assert.NotNull(await c.GetAsync("p", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await c.GetAsync("p/x/3", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(1, await c.DeletePrefixAsync("", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task WithPrefix_SiblingPrefixes_NeverSeeEachOthersKeys()
    {
        using var h = StoreHarness.Start();
        var root = await h.ConnectAsync();
        var a = root.WithPrefix("a");
        var ab = root.WithPrefix("ab");
        await a.SetAsync("b1", [1], Ct).WaitAsync(Deadline, Ct);
        await ab.SetAsync("1", [2], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([1], await a.GetAsync("b1", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([2], await ab.GetAsync("1", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await a.GetAsync("1", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await ab.GetAsync("b1", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(1, await a.AddAsync("n", 1, Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(5, await ab.AddAsync("n", 5, Ct).WaitAsync(Deadline, Ct));
        AssertCas(true, new byte[] { 3 }, await ab.CompareAndSetAsync("b1", null, [3], Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([1], await a.GetAsync("b1", Ct).WaitAsync(Deadline, Ct));
        // Clearing one view leaves the other alone.
        Assert.Equal(3, await ab.DeletePrefixAsync("", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([1], await a.GetAsync("b1", Ct).WaitAsync(Deadline, Ct));
        Assert.False(await ab.DeleteAsync("n", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(2, await a.AddAsync("n", 1, Ct).WaitAsync(Deadline, Ct));
        // Keys land under the prefix and a separator in the shared store.
        Assert.Equal([1], await root.GetAsync("a/b1", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task WithPrefix_Nested_ComposesAndStaysInsideParent()
    {
        using var h = StoreHarness.Start();
        var root = await h.ConnectAsync();
        var outer = root.WithPrefix("g/");
        var inner = outer.WithPrefix("x");
        await inner.SetAsync("k", [7], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([7], await root.GetAsync("g/x/k", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([7], await outer.GetAsync("x/k", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([7], await root.WithPrefix("g/x/").GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await outer.WithPrefix("xy").GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await root.WithPrefix("x").GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        await root.SetAsync("g/other", [1], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(1, await inner.DeletePrefixAsync("", Ct).WaitAsync(Deadline, Ct));
        Assert.Equal([1], await root.GetAsync("g/other", Ct).WaitAsync(Deadline, Ct));
        Assert.Throws<ArgumentException>(() => root.WithPrefix(""));
    }

    [Fact]
    public async Task WithPrefix_WaitTimeout_ReportsMissingKeysAsTheViewNamesThem()
    {
        using var h = StoreHarness.Start();
        var view = (await h.ConnectAsync()).WithPrefix("grp/3");
        await view.SetAsync("1/0", [0], Ct).WaitAsync(Deadline, Ct);
        var e = await Assert.ThrowsAsync<StoreTimeoutException>(() =>
            view.WaitGetAsync(["1/0", "1/1", "1/2"], TimeSpan.FromMilliseconds(200), Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(["1/1", "1/2"], e.MissingKeys);
        Assert.Contains("grp/3/1/1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task WaitGet_KeysSetLaterByAnotherClient_ReturnsTheirValues()
    {
        using var h = StoreHarness.Start();
        var waiter = await h.ConnectAsync(0);
        var setter = await h.ConnectAsync(1);
        var wait = waiter.WaitGetAsync(["x", "y"], TimeSpan.FromMinutes(10), Ct);
        await h.UntilAsync(s => s.PendingWaits == 1, "the wait pending");
        Assert.False(wait.IsCompleted);
        // The store wakes ready waits before it answers the set: still pending after it means one key is not enough.
        await setter.SetAsync("x", [1], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal(1, h.Server.PendingWaits);
        Assert.False(wait.IsCompleted);
        await setter.AddAsync("y", 2, Ct).WaitAsync(Deadline, Ct);
        var values = await wait.WaitAsync(Deadline, Ct);
        Assert.Equal([1], values[0]);
        Assert.Equal([2, 0, 0, 0, 0, 0, 0, 0], values[1]);
    }

    [Fact]
    public async Task Gather_SetsWaitsAndDropsThePreviousKeyOnceAllAreThere_InOneRoundTrip()
    {
        using var h = StoreHarness.Start();
        var (a, b) = ((await h.ConnectAsync(0)).WithPrefix("g"), (await h.ConnectAsync(1)).WithPrefix("g"));
        await a.SetAsync("1/0", [9], Ct).WaitAsync(Deadline, Ct); // Each member's key of the previous call.
        await b.SetAsync("1/1", [9], Ct).WaitAsync(Deadline, Ct);
        var first = a.GatherAsync("2/0", [1], "1/0", ["2/0", "2/1"], TimeSpan.FromMinutes(10), Ct);
        await h.UntilAsync(s => s.PendingWaits == 1, "the first member waiting");
        Assert.NotNull(await b.GetAsync("1/0", Ct).WaitAsync(Deadline, Ct)); // Not dropped while a member may still read it.
        var second = await b.GatherAsync("2/1", [2], "1/1", ["2/0", "2/1"], TimeSpan.FromMinutes(10), Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([[1], [2]], second);
        Assert.Equal([[1], [2]], await first.WaitAsync(Deadline, Ct));
        Assert.Null(await a.GetAsync("1/0", Ct).WaitAsync(Deadline, Ct));
        Assert.Null(await a.GetAsync("1/1", Ct).WaitAsync(Deadline, Ct));
        var e = await Assert.ThrowsAsync<StoreTimeoutException>(() => a.GatherAsync("3/0", [3], "2/0", ["3/0", "3/1"], TimeSpan.FromMilliseconds(200), Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(["3/1"], e.MissingKeys);
        Assert.NotNull(await a.GetAsync("2/0", Ct).WaitAsync(Deadline, Ct)); // A gather that timed out drops nothing.
    }

    [Fact]
    public async Task WaitGet_PresentOrNoKeys_ReturnsAtOnce()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        await c.SetAsync("a", [1], Ct).WaitAsync(Deadline, Ct);
        await c.SetAsync("b", [2], Ct).WaitAsync(Deadline, Ct);
        Assert.Equal([[2], [1], [2]], await c.WaitGetAsync(["b", "a", "b"], TimeSpan.FromSeconds(30), Ct).WaitAsync(Deadline, Ct));
        Assert.Empty(await c.WaitGetAsync([], TimeSpan.FromSeconds(30), Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task WaitGet_Timeout_ListsExactlyTheMissingKeys()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        await c.SetAsync("a", [1], Ct).WaitAsync(Deadline, Ct);
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<StoreTimeoutException>(() =>
            c.WaitGetAsync(["a", "b", "c"], TimeSpan.FromMilliseconds(300), Ct).WaitAsync(Deadline, Ct));
        Assert.True(sw.Elapsed >= TimeSpan.FromMilliseconds(250), $"timed out after {sw.Elapsed}");
        Assert.Equal(["b", "c"], e.MissingKeys);
        Assert.Contains("'b'", e.Message, StringComparison.Ordinal);
        // The connection is still good after a timeout reply.
        Assert.Equal([1], await c.GetAsync("a", Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task WaitGet_NegativeTimeout_AnswersAtOnce()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        var e = await Assert.ThrowsAsync<StoreTimeoutException>(() => c.WaitGetAsync(["z"], TimeSpan.FromSeconds(-5), Ct).WaitAsync(Deadline, Ct));
        Assert.Equal(["z"], e.MissingKeys);
        Assert.Null(await c.WatchDeadAsync(TimeSpan.FromSeconds(-1), Ct).WaitAsync(Deadline, Ct));
    }

    [Fact]
    public async Task Client_AfterDispose_FailsAtOnce()
    {
        using var h = StoreHarness.Start();
        var c = await h.ConnectAsync();
        c.Dispose();
        var e = await Assert.ThrowsAsync<RendezvousException>(() => c.GetAsync("k", Ct).WaitAsync(Deadline, Ct));
        Assert.Contains("unusable", e.Message, StringComparison.Ordinal);
    }
}

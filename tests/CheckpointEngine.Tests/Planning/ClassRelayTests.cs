using CheckpointEngine.Planning;

namespace CheckpointEngine.Tests.Planning;

public sealed class ClassRelayTests
{
    // Two hosts, one TP 2 instance on each: members 0, 1 on host 0, members 2, 3 on host 1; classes by tensor-parallel index.
    private static readonly int[] TwoHosts = [0, 0, 1, 1];
    private static readonly int[] ByTpIndex = [0, 1, 0, 1];

    /// <summary>Each relay as "class: head, members" with "(proxy)" where the head is not of the class.</summary>
    private static string[] Shape(ClassRelay relay) => [.. relay.Relays.Select(r => $"{r.Class}: {string.Join(", ", r.Members)}{(r.Proxy ? " (proxy)" : "")}")];

    [Fact]
    public void For_EachClassRelaysFromItsMemberOnTheStagersHost()
    {
        var relay = ClassRelay.For(1, TwoHosts, ByTpIndex)!;
        Assert.Equal([2, 3], relay.Local);
        Assert.Equal(["0: 2, 0", "1: 3, 1"], Shape(relay));
        Assert.Equal([1], relay.RelaysOf(1).Select(r => r.Class));
        Assert.True(relay.HeadsOwnClass(3));
        Assert.False(relay.HeadsOwnClass(1));
        Assert.Empty(relay.ProxiedBy(2));
    }

    [Fact]
    public void For_OneHost_NoRelay() => Assert.Null(ClassRelay.For(0, [0, 0, 0], [0, 1, 0]));

    [Fact]
    public void For_ClassesMissingOnTheStagersHost_GetProxiesThere_TakingTurns()
    {
        // TP 4 across two hosts (two instances): classes 2 and 3 live only on host 1, so members of host 0 cut their parts as proxies.
        var relay = ClassRelay.For(0, [0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3])!;
        Assert.Equal(["2: 0, 2, 6 (proxy)", "3: 1, 3, 7 (proxy)"], Shape(relay));
        Assert.Equal([2], relay.ProxiedBy(0).Select(r => r.Class));
        Assert.Equal([3], relay.ProxiedBy(1).Select(r => r.Class));
        Assert.Empty(relay.ProxiedBy(4));
    }

    [Fact]
    public void For_SeveralMembersOfAClassAway_OneRelayCarriesThemAll()
    {
        // Three hosts; class 0 has a member on each.
        var relay = ClassRelay.For(0, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1])!;
        Assert.Equal(["0: 0, 1, 2", "1: 3, 4, 5"], Shape(relay));
    }

    [Theory]
    [InlineData(500, 500, 1000, true)]  // Split tensors: the parts add up to the bucket.
    [InlineData(700, 700, 1000, false)] // Replicated tensors cross once per class: more than the whole bucket.
    [InlineData(300, 300, 1000, true)]  // Tensors nobody keeps stay home.
    public void Pays_WhenNoHostTakesInMoreThanTheWholeBucket(long class0, long class1, long bucket, bool pays) =>
        Assert.Equal(pays, ClassRelay.For(0, TwoHosts, ByTpIndex)!.Pays([class0, class1], bucket, TwoHosts));

    [Fact]
    public void Pays_CountsOnlyTheClassesAHostHas()
    {
        // An instance spanning two hosts: host 1 holds only class 1 and takes in its part alone, even where both parts exceed the bucket.
        var relay = ClassRelay.For(0, [0, 1], [0, 1])!;
        Assert.True(relay.Pays([600, 600], 1000, [0, 1]));
    }

    [Fact]
    public void For_AClassWithAMemberHere_IsHeadedByThatMember_EvenWhenItIsNotTheFirstLocalRank()
    {
        // Host 0 holds ranks 0 (class 1) and 1 (class 0); class 0's other member is on host 1.
        var relay = ClassRelay.For(0, [0, 0, 1, 1], [1, 0, 0, 1])!;
        var class0 = relay.Relays.Single(r => r.Class == 0);
        Assert.Equal([1, 2], class0.Members);
        Assert.False(class0.Proxy);
    }

    [Fact]
    public void Pays_CountsWhatEachReceivingHostTakesIn_NotTheHeadsHost()
    {
        // Ranks 0 and 1 on host 0 head classes 0 and 1; host 1 receives class 0 only, host 2 class 1 only.
        int[] hostOf = [0, 0, 1, 2];
        var relay = ClassRelay.For(0, hostOf, [0, 1, 0, 1])!;
        Assert.True(relay.Pays([60, 60], 100, hostOf)); // Each receiving host takes 60 of 100; host 0 sends 120 but receives nothing.
        Assert.False(relay.Pays([60, 160], 100, hostOf)); // Host 2 would take 160.
    }
}


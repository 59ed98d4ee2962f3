using CheckpointEngine.Planning;

namespace CheckpointEngine.Tests.Planning;

public sealed class ClassRelayTests
{
    // Two hosts, one TP 2 instance on each: members 0, 1 on host 0, members 2, 3 on host 1; classes by tensor-parallel index.
    private static readonly int[] TwoHosts = [0, 0, 1, 1];
    private static readonly int[] ByTpIndex = [0, 1, 0, 1];

    [Fact]
    public void For_EachClassRelaysFromItsMemberOnTheStagersHost()
    {
        var relay = ClassRelay.For(1, TwoHosts, ByTpIndex)!;
        Assert.Equal([2, 3], relay.Local);
        Assert.Equal([(0, new[] { 2, 0 }), (1, new[] { 3, 1 })], relay.Relays.Select(r => (r.Class, r.Members)));
        Assert.Equal([3, 1], relay.RelayOf(1)!);
        Assert.Equal([2, 0], relay.RelayOf(2)!);
    }

    [Fact]
    public void For_OneHost_NoRelay() => Assert.Null(ClassRelay.For(0, [0, 0, 0], [0, 1, 0]));

    [Fact]
    public void For_AClassMissingOnTheStagersHost_NoRelay()
    {
        // TP 4 across two hosts: classes 2 and 3 live only on host 1, so nobody on host 0 holds their part to relay.
        Assert.Null(ClassRelay.For(0, TwoHosts, [0, 1, 2, 3]));
    }

    [Fact]
    public void For_SeveralMembersOfAClassAway_OneRelayCarriesThemAll()
    {
        // Three hosts; class 0 has a member on each.
        var relay = ClassRelay.For(0, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1])!;
        Assert.Equal([(0, new[] { 0, 1, 2 }), (1, new[] { 3, 4, 5 })], relay.Relays.Select(r => (r.Class, r.Members)));
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
        // Host 1 holds only class 0: it takes in class 0's part alone, even where both parts together exceed the bucket.
        var relay = ClassRelay.For(0, [0, 0, 1], [0, 1, 0])!;
        Assert.True(relay.Pays([600, 600], 1000, [0, 0, 1]));
    }
}

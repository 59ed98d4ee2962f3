using System.Net;
using System.Net.Sockets;
using CheckpointEngine.Cli.Commands;

namespace CheckpointEngine.IntegrationTests.Hosting;

/// <summary>The <c>worker</c> command's flag checks (the running worker is covered by <see cref="WorkerHttpTests"/>).</summary>
public class WorkerCliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CkptEngineCli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Theory]
    [InlineData("--listen", "8000", "--listen: '8000' is not HOST:PORT")]
    [InlineData("--listen", "127.0.0.1:http", "--listen: '127.0.0.1:http': the port must be a number in [0, 65535]")]
    [InlineData("--listen", "127.0.0.1:70000", "the port must be a number in [0, 65535]")]
    [InlineData("--listen", "::1:8000", "write an IPv6 host in brackets, e.g. [::1]:8000")]
    [InlineData("--listen", "127.0.0.1:0", "--tp", "0", "--tp must be at least 1")]
    [InlineData("--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", "a", "--device-ids names 1 device(s) but --tp is 2")]
    [InlineData("--listen", "127.0.0.1:0", "--device-ids", "a,b", "--device-ids names 2 device(s) but --tp is 1")]
    [InlineData("--listen", "127.0.0.1:0", "--fail-at-bucket", "-1", "--fail-at-bucket must not be negative")]
    [InlineData("--listen", "127.0.0.1:0", "--idle-timeout", "0", "--idle-timeout must be a positive number of seconds")]
    [InlineData("--tp", "1", "Option '--listen' is required")]
    [InlineData("--listen", "127.0.0.1:0", "--corrupt-tensor", " ", "--corrupt-tensor needs a tensor name")]
    public void Worker_BadFlag_IsRejectedWithTheReason(params string[] argsThenMessage)
    {
        var (code, _, stderr) = Run(["worker", .. argsThenMessage[..^1]]);
        Assert.NotEqual(0, code);
        Assert.Contains(argsThenMessage[^1], stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--api", "localhost:7000", "--engine", "http://127.0.0.1:8000", "step", "--api must be an http(s) URL")]
    [InlineData("--api", "http://127.0.0.1:7000", "--engine", "ftp://x", "step", "--engine must be an http(s) URL")]
    [InlineData("--api", "http://127.0.0.1:7000", "step", "Option '--engine' is required")]
    [InlineData("--api", "http://127.0.0.1:7000", "--engine", "http://127.0.0.1:8000", "Required argument missing for command: 'verify'")]
    public void Verify_BadFlag_IsRejectedWithTheReason(params string[] argsThenMessage)
    {
        var (code, _, stderr) = Run(["verify", .. argsThenMessage[..^1]]);
        Assert.NotEqual(0, code);
        Assert.Contains(argsThenMessage[^1], stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Verify_NothingListening_ExitsOneNamingTheUrl()
    {
        var port = TestPorts.Free();
        var (code, _, stderr) = Run("verify", "--api", $"http://127.0.0.1:{port}", "--engine", $"http://127.0.0.1:{port}", "step");
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.StartsWith($"error: GET http://127.0.0.1:{port}/v1/checkpoints/step: ", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("a,a", "error: device id 'a' is given twice")]
    [InlineData("a,", "error: device id #1 is empty")]
    public void Worker_BadDeviceIds_ExitOneWithTheReason(string ids, string message)
    {
        var (code, _, stderr) = Run("worker", "--listen", "127.0.0.1:0", "--tp", "2", "--device-ids", ids);
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Equal(message, stderr.Trim());
    }

    [Fact]
    public void Worker_PortInUse_ExitOneNamingTheAddress()
    {
        using var taken = new Socket(SocketType.Stream, ProtocolType.Tcp);
        taken.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        taken.Listen();
        var port = ((IPEndPoint)taken.LocalEndPoint!).Port;
        var (code, _, stderr) = Run("worker", "--listen", $"127.0.0.1:{port}");
        Assert.Equal(CkptEngineCli.BadInput, code);
        Assert.Contains($"127.0.0.1:{port}", stderr, StringComparison.Ordinal);
    }
}

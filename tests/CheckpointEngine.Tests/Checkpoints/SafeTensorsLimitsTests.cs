using System.Runtime.InteropServices;
using System.Text;
using CheckpointEngine.Checkpoints;
using static CheckpointEngine.Tests.Support.RawSafeTensors;

namespace CheckpointEngine.Tests.Checkpoints;

/// <summary>Files at the format's limits: a header of exactly the largest length, a tensor larger than one positioned read.</summary>
public sealed class SafeTensorsLimitsTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Open_AHeaderOfExactlyTheLargestLength_Opens()
    {
        var header = Encoding.ASCII.GetBytes("{\"__metadata__\":{\"k\":\"v\"}}".PadRight((int)SafeTensorsHeader.MaxHeaderLength));
        using var file = SafeTensorsFile.Open(_dir.Write("max.safetensors", Build(header)));
        Assert.Equal(8 + SafeTensorsHeader.MaxHeaderLength, file.DataStart);
        Assert.Equal("v", file.Header.Metadata!["k"]);
    }

    [Fact]
    public unsafe void ReadInto_ATensorLargerThanOneRead_LandsWhole()
    {
        const long n = (1L << 30) + 4096; // One positioned read carries at most 1 GiB.
        var header = Encoding.ASCII.GetBytes($"{{\"t\":{{\"dtype\":\"U8\",\"shape\":[{n}],\"data_offsets\":[0,{n}]}}}}");
        var path = _dir.Write("big.safetensors", Build(header));
        long dataStart;
        using (var probe = File.OpenWrite(path))
        {
            dataStart = probe.Length;
            probe.SetLength(dataStart + n); // Sparse: zeros but for the marks below.
            foreach (var at in new[] { 0L, (1L << 30) - 1, 1L << 30, n - 1 })
            {
                probe.Position = dataStart + at;
                probe.WriteByte((byte)(at % 251 + 1));
            }
        }
        using var file = SafeTensorsFile.Open(path);
        var destination = (byte*)NativeMemory.Alloc((nuint)n);
        try
        {
            file.ReadInto(file.Header.Tensors[0], 0, n, destination);
            foreach (var at in new[] { 0L, (1L << 30) - 1, 1L << 30, n - 1 })
            {
                Assert.Equal((byte)(at % 251 + 1), destination[at]);
            }
            Assert.Equal(0, destination[(1L << 30) + 1]);
            file.ReadInto(file.Header.Tensors[0], (1L << 30) - 1, 2, destination); // A range that starts in the second GiB's edge.
            Assert.Equal((byte)((1L << 30) % 251 + 1), destination[1]);
        }
        finally
        {
            NativeMemory.Free(destination);
        }
    }
}

namespace CheckpointEngine.Cli.Bench;

/// <summary>Rows of cells, rendered padded for a terminal or as a markdown table.</summary>
internal sealed class Table(string[] header, bool[] rightAligned)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public string Text()
    {
        var widths = header.Select((h, i) => _rows.Select(r => r[i].Length).Append(h.Length).Max()).ToArray();
        var sb = new System.Text.StringBuilder();
        foreach (var row in _rows.Prepend(header))
        {
            var cells = row.Select((c, i) => rightAligned[i] ? c.PadLeft(widths[i]) : c.PadRight(widths[i]));
            sb.Append(string.Join("  ", cells).TrimEnd()).Append('\n');
        }
        return sb.ToString();
    }

    public string Markdown()
    {
        var sb = new System.Text.StringBuilder();
        sb.Append("| ").AppendJoin(" | ", header).Append(" |\n");
        sb.Append('|').AppendJoin('|', rightAligned.Select(r => r ? "---:" : "---")).Append("|\n");
        foreach (var row in _rows)
        {
            sb.Append("| ").AppendJoin(" | ", row.Select(c => c.Replace("|", "\\|", StringComparison.Ordinal))).Append(" |\n");
        }
        return sb.ToString();
    }
}

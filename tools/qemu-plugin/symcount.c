// SPDX-License-Identifier: GPL-2.0
/*
 * symcount: a QEMU TCG plugin that counts the guest instructions executed
 * per kernel symbol, exactly, on one vCPU.
 *
 *   qemu-system-x86_64 ... -plugin symcount.so,symbols=FILE,out=FILE[,mark=SYMBOL]
 *
 * symbols=FILE  the guest kernel's symbols, as `nm -n -S --defined-only
 *               vmlinux` prints them ("ADDR SIZE TYPE NAME") or as
 *               System.map does ("ADDR TYPE NAME"); text symbols (t T w W)
 *               are used, a symbol without a size ends where the next begins;
 *               of several at one address the sized, global one names it, and
 *               symbols of one name (a static function in several files)
 *               share one counter
 * out=FILE      snapshots are appended here, one JSON object per line:
 *               {"snapshot": N, "reason": "mark"|"exit", "counts": {NAME: COUNT}}
 *               with every non-zero counter (cumulative since QEMU started)
 * mark=SYMBOL   a snapshot each time the vCPU executes SYMBOL's first
 *               instruction (default __x64_sys_sync: run `sync` in the guest
 *               before and after the work to measure, then diff the two);
 *               a last snapshot is written when QEMU exits
 * dump=FILE     write the symbol table as resolved ("START END NAME", hex,
 *               one per line) and go on: for checking the rules above
 *
 * Instructions outside every symbol are counted as "[user]" (the lower,
 * user half of the canonical address space) or "[kernel other]".
 *
 * Cost: at translation, each instruction is mapped to its symbol (binary
 * search); each run of consecutive instructions of one symbol in a
 * translation block gets one inline add on its first instruction. Inline
 * ops are TCG ops, not guest instructions: under -icount the guest's
 * virtual clock does not see them. The counters are plain uint64_t, so
 * the plugin refuses more than one vCPU.
 *
 * Built against QEMU's include/qemu/qemu-plugin.h (API version 1, QEMU
 * 7.2) by kmlbench.build.qemu_plugin; see docs/benchmarks.md, "Where the
 * instructions go".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* x86-64's canonical upper half: the kernel's addresses. */
#define KERNEL_HALF 0xffff800000000000ULL

struct sym {
	uint64_t start, end; /* [start, end) */
	char *name;
	size_t counter; /* symbols of one name (static functions of several files) share one */
};

static struct sym *syms;
static size_t nsyms;
/* counts[syms[i].counter] for syms[i]; then the two catch-alls. */
static uint64_t *counts;
#define USER_IDX (nsyms)
#define KOTHER_IDX (nsyms + 1)

static FILE *out;
static uint64_t mark_addr;
static const char *mark_name = "__x64_sys_sync";
static unsigned long snapshots;

struct raw {
	uint64_t start, size;
	int sized, global;
	char *name;
};

static int raw_cmp(const void *a, const void *b)
{
	const struct raw *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	/* at one address: a sized symbol first, then a global one */
	if (x->sized != y->sized)
		return y->sized - x->sized;
	return y->global - x->global;
}

static int name_cmp(const void *a, const void *b)
{
	const struct sym *x = &syms[*(const size_t *)a], *y = &syms[*(const size_t *)b];
	int c = strcmp(x->name, y->name);

	return c ? c : (x->start < y->start ? -1 : 1);
}

/* One counter per name: the first symbol of a name (by address) owns it. */
static void share_counters(void)
{
	size_t *order = malloc(nsyms * sizeof(*order)), i;

	if (!order)
		abort();
	for (i = 0; i < nsyms; i++)
		order[i] = i;
	qsort(order, nsyms, sizeof(*order), name_cmp);
	for (i = 0; i < nsyms; i++) {
		struct sym *s = &syms[order[i]];

		if (i && !strcmp(s->name, syms[order[i - 1]].name))
			s->counter = syms[order[i - 1]].counter;
		else
			s->counter = order[i];
	}
	free(order);
}

static int load_symbols(const char *path)
{
	FILE *f = fopen(path, "r");
	struct raw *raw = NULL;
	size_t n = 0, cap = 0, i, k;
	uint64_t cover;
	char line[1024];

	if (!f) {
		fprintf(stderr, "symcount: %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		char a[64], b[64], c[512], d[512];
		int fields = sscanf(line, "%63s %63s %511s %511s", a, b, c, d);
		const char *type, *name;
		uint64_t size = 0;
		int sized = 0;

		if (fields == 4) {
			size = strtoull(b, NULL, 16);
			sized = 1;
			type = c;
			name = d;
		} else if (fields == 3) {
			type = b;
			name = c;
		} else {
			continue;
		}
		if (strlen(type) != 1 || !strchr("tTwW", type[0]))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 4096;
			raw = realloc(raw, cap * sizeof(*raw));
			if (!raw)
				abort();
		}
		raw[n].start = strtoull(a, NULL, 16);
		raw[n].size = size;
		raw[n].sized = sized && size > 0;
		raw[n].global = type[0] == 'T' || type[0] == 'W';
		raw[n].name = strdup(name);
		n++;
	}
	fclose(f);
	if (!n) {
		fprintf(stderr, "symcount: no text symbols in %s\n", path);
		return -1;
	}
	qsort(raw, n, sizeof(*raw), raw_cmp);
	/*
	 * Keep one symbol per address (the first: sized, global) and drop an
	 * unsized label inside a sized function (.E_copy in copy_user_*): its
	 * instructions are the function's.
	 */
	for (i = 0, k = 0, cover = 0; i < n; i++) {
		if ((k && raw[k - 1].start == raw[i].start) ||
		    (!raw[i].sized && raw[i].start < cover)) {
			free(raw[i].name);
			continue;
		}
		if (raw[i].sized && raw[i].start + raw[i].size > cover)
			cover = raw[i].start + raw[i].size;
		raw[k++] = raw[i];
	}
	n = k;
	syms = calloc(n, sizeof(*syms));
	if (!syms)
		abort();
	/* a symbol ends at its size, or where the next one begins */
	for (i = 0; i < n; i++) {
		uint64_t next = i + 1 < n ? raw[i + 1].start :
					    raw[i].start + (raw[i].sized ? raw[i].size : 1);

		syms[nsyms].start = raw[i].start;
		syms[nsyms].end = raw[i].sized && raw[i].start + raw[i].size < next ?
					  raw[i].start + raw[i].size : next;
		syms[nsyms].name = raw[i].name;
		nsyms++;
	}
	free(raw);
	share_counters();
	counts = calloc(nsyms + 2, sizeof(*counts));
	if (!counts)
		abort();
	return 0;
}

static size_t lookup(uint64_t addr)
{
	size_t lo = 0, hi = nsyms;

	if (addr < KERNEL_HALF)
		return USER_IDX;
	/* the last symbol starting at or below addr */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (syms[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo && addr < syms[lo - 1].end)
		return syms[lo - 1].counter;
	return KOTHER_IDX;
}

static const char *name_of(size_t idx)
{
	if (idx == USER_IDX)
		return "[user]";
	if (idx == KOTHER_IDX)
		return "[kernel other]";
	return syms[idx].name;
}

static void put_json_string(const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', out);
		if ((unsigned char)*s < 0x20)
			fprintf(out, "\\u%04x", *s);
		else
			fputc(*s, out);
	}
	fputc('"', out);
}

static void snapshot(const char *reason)
{
	size_t i;
	int first = 1;

	fprintf(out, "{\"snapshot\": %lu, \"reason\": \"%s\", \"counts\": {", snapshots++, reason);
	for (i = 0; i < nsyms + 2; i++) {
		if (!counts[i])
			continue;
		if (!first)
			fputs(", ", out);
		first = 0;
		put_json_string(name_of(i));
		fprintf(out, ": %" PRIu64, counts[i]);
	}
	fputs("}}\n", out);
	fflush(out);
}

static void on_mark(unsigned int vcpu_index, void *udata)
{
	snapshot("mark");
}

static void on_qemu_exit(qemu_plugin_id_t id, void *udata)
{
	snapshot("exit");
	fclose(out);
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb), i, group = 0;
	size_t *idx;

	if (!n)
		return;
	idx = malloc(n * sizeof(*idx));
	if (!idx)
		abort();
	for (i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint64_t vaddr = qemu_plugin_insn_vaddr(insn);

		idx[i] = lookup(vaddr);
		if (mark_addr && vaddr == mark_addr)
			qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS,
							       NULL);
	}
	/* one inline add per run of one symbol, on its first instruction */
	for (i = 1; i <= n; i++) {
		if (i < n && idx[i] == idx[group])
			continue;
		qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, group),
							   QEMU_PLUGIN_INLINE_ADD_U64,
							   &counts[idx[group]], i - group);
		group = i;
	}
	free(idx);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
					   int argc, char **argv)
{
	const char *symbols = NULL, *out_path = NULL, *dump = NULL;
	size_t i;
	int k;

	for (k = 0; k < argc; k++) {
		const char *arg = argv[k];

		if (!strncmp(arg, "symbols=", 8))
			symbols = arg + 8;
		else if (!strncmp(arg, "out=", 4))
			out_path = arg + 4;
		else if (!strncmp(arg, "mark=", 5))
			mark_name = arg + 5;
		else if (!strncmp(arg, "dump=", 5))
			dump = arg + 5;
		else {
			fprintf(stderr, "symcount: unknown argument %s (symbols=, out=, mark=, dump=)\n",
				arg);
			return -1;
		}
	}
	if (!symbols || !out_path) {
		fprintf(stderr, "symcount: needs symbols=FILE and out=FILE\n");
		return -1;
	}
	if (!info->system_emulation) {
		fprintf(stderr, "symcount: counts a system guest's kernel, not user mode\n");
		return -1;
	}
	if (info->system.smp_vcpus != 1 || info->system.max_vcpus != 1) {
		fprintf(stderr, "symcount: one vCPU only (the counters are not atomic), not %d\n",
			info->system.max_vcpus);
		return -1;
	}
	if (load_symbols(symbols))
		return -1;
	if (dump) {
		FILE *f = fopen(dump, "w");

		if (!f) {
			fprintf(stderr, "symcount: %s: %s\n", dump, strerror(errno));
			return -1;
		}
		for (i = 0; i < nsyms; i++)
			fprintf(f, "%" PRIx64 " %" PRIx64 " %s\n", syms[i].start, syms[i].end,
				syms[i].name);
		fclose(f);
	}
	if (*mark_name) {
		for (i = 0; i < nsyms && strcmp(syms[i].name, mark_name); i++)
			;
		if (i == nsyms) {
			fprintf(stderr, "symcount: mark symbol %s is not in %s\n", mark_name, symbols);
			return -1;
		}
		mark_addr = syms[i].start;
	}
	out = fopen(out_path, "a");
	if (!out) {
		fprintf(stderr, "symcount: %s: %s\n", out_path, strerror(errno));
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
	qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
	return 0;
}

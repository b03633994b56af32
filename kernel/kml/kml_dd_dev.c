// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/kml: the user-space side of KML for mq-deadline.
 *
 * A trainer in user space mmap()s the sample ring and pops records from it
 * (lock-free, no system call per sample), trains, and publishes a model by
 * write()ing the model file and committing it with KML_IOC_COMMIT.  The
 * bytes are staged per open file and validated as a whole before the swap,
 * so a trainer that dies halfway through an update changes nothing.
 */
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include "kml_internal.h"
#include "kml_dd.h"

#define KML_DD_MAX_MODEL_BYTES	(64U << 10)	/* 4 layers of 64 fit easily */

struct kml_dd_file {
	struct mutex lock;		/* staging buffer and its length */
	u8 *staged;			/* KML_DD_MAX_MODEL_BYTES, on first write */
	size_t staged_len;
	bool owns_ring;			/* this file mapped the ring */
};

static int kml_dd_open(struct inode *inode, struct file *file)
{
	struct kml_dd_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	file->private_data = f;
	return 0;
}

static int kml_dd_release(struct inode *inode, struct file *file)
{
	struct kml_dd_file *f = file->private_data;

	if (f->staged_len)
		kml_dd_stat_inc(KML_DD_S_UPDATES_ABORTED);
	if (f->owns_ring)
		kml_dd_ring_release(KML_DD_OWNER_USER);
	kvfree(f->staged);
	kfree(f);
	return 0;
}

static ssize_t kml_dd_write(struct file *file, const char __user *buf,
			    size_t count, loff_t *ppos)
{
	struct kml_dd_file *f = file->private_data;
	ssize_t ret = count;

	mutex_lock(&f->lock);
	if (!f->staged) {
		f->staged = kvmalloc(KML_DD_MAX_MODEL_BYTES, GFP_KERNEL);
		if (!f->staged) {
			ret = -ENOMEM;
			goto out;
		}
	}
	if (count > KML_DD_MAX_MODEL_BYTES - f->staged_len) {
		ret = -EFBIG;
		goto out;
	}
	if (copy_from_user(f->staged + f->staged_len, buf, count)) {
		ret = -EFAULT;
		goto out;
	}
	f->staged_len += count;
out:
	mutex_unlock(&f->lock);
	return ret;
}

static long kml_dd_commit(struct kml_dd_file *f)
{
	long ret;

	mutex_lock(&f->lock);
	if (!f->staged_len) {
		ret = -ENODATA;
	} else {
		ret = kml_dd_publish(f->staged, f->staged_len);
		f->staged_len = 0;
	}
	mutex_unlock(&f->lock);
	return ret;
}

static long kml_dd_info(void __user *arg)
{
	struct kml_dev_info info;

	kml_dd_get_info(&info);
	info.max_model_bytes = KML_DD_MAX_MODEL_BYTES;
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long kml_dd_ioctl(struct file *file, unsigned int cmd,
			 unsigned long arg)
{
	struct kml_dd_file *f = file->private_data;

	switch (cmd) {
	case KML_IOC_INFO:
		return kml_dd_info((void __user *)arg);
	case KML_IOC_COMMIT:
		return kml_dd_commit(f);
	case KML_IOC_DISCARD:
		mutex_lock(&f->lock);
		f->staged_len = 0;
		mutex_unlock(&f->lock);
		return 0;
	case KML_IOC_UNLOAD:
		kml_dd_unload();
		return 0;
	default:
		return -ENOTTY;
	}
}

/*
 * One consumer at a time: the ring is single-consumer.  The claim is held
 * until the file is released, which for a mapping is after munmap().  The
 * mapping is checked before the claim, so a bad one claims nothing.
 */
static int kml_dd_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct kml_dd_file *f = file->private_data;
	size_t bytes = kml_dd_ring_bytes();
	int ret;

	if (!bytes)
		return -ENODEV;
	if (vma->vm_pgoff || vma->vm_end - vma->vm_start > bytes)
		return -EINVAL;
	if (!f->owns_ring) {
		ret = kml_dd_ring_claim(KML_DD_OWNER_USER);
		if (ret)
			return ret;
		f->owns_ring = true;
	}
	return kml_dd_ring_mmap(vma);
}

static const struct file_operations kml_dd_fops = {
	.owner = THIS_MODULE,
	.open = kml_dd_open,
	.release = kml_dd_release,
	.write = kml_dd_write,
	.unlocked_ioctl = kml_dd_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = kml_dd_mmap,
	.llseek = noop_llseek,
};

static struct miscdevice kml_dd_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "kml",
	.fops = &kml_dd_fops,
	.mode = 0600,
};

static int __init kml_dd_dev_init(void)
{
	int ret = misc_register(&kml_dd_misc);

	if (ret)
		pr_warn("kml: /dev/kml not available (%d)\n", ret);
	return 0;
}
late_initcall(kml_dd_dev_init);
